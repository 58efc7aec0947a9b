"""The block manager alone: allocation, prefix hits, sharing, LRU reuse, collisions."""

from __future__ import annotations

import pytest
from cortex_transformers import block_manager
from cortex_transformers.block_manager import BlockManager, BlockTable

BS = 4


def _run(manager: BlockManager, tokens: list[int]) -> tuple[BlockTable, int]:
    """Allocate ``tokens``, "compute" them all and publish the full blocks."""
    table = BlockTable()
    cached = manager.allocate(table, tokens)
    manager.register(table, tokens, len(tokens))
    return table, cached


def test_a_new_prompt_is_all_miss_and_holds_blocks_for_its_tokens() -> None:
    manager = BlockManager(8, BS)
    table, cached = _run(manager, list(range(10)))
    assert cached == 0
    assert len(table.blocks) == 3 and manager.free_blocks == 5


def test_a_repeated_prefix_hits_its_full_blocks_but_leaves_the_last_token_to_compute() -> None:
    manager = BlockManager(8, BS)
    first, _ = _run(manager, list(range(8)))
    manager.deallocate(first)
    assert manager.free_blocks == 8
    # 8 tokens: only the first block may hit, the last token must be computed for its logits.
    assert _run(manager, list(range(8)))[1] == 4
    longer, cached = _run(manager, [*range(8), 99, 98, 97])
    assert cached == 8  # shared with the running sequence above
    assert manager.blocks_for(11) == len(longer.blocks)


def test_a_different_token_ends_the_hit_at_its_block() -> None:
    manager = BlockManager(8, BS)
    _run(manager, list(range(12)))
    assert manager.cached_prefix([0, 1, 2, 3, 4, 5, 0, 7, 8, 9, 10, 11, 12]) == [0]


def test_shared_blocks_stay_held_until_every_sequence_lets_go() -> None:
    manager = BlockManager(4, BS)
    a, _ = _run(manager, list(range(9)))  # 3 blocks
    b, cached = _run(manager, list(range(9)))
    assert cached == 8 and b.blocks[:2] == a.blocks[:2]
    assert manager.free_blocks == 0  # a's 3 blocks + b's own last block
    manager.deallocate(a)
    assert manager.free_blocks == 1
    manager.deallocate(b)
    assert manager.free_blocks == 4


def test_freed_prefixes_stay_cached_until_the_pool_needs_their_blocks() -> None:
    manager = BlockManager(4, BS)
    old, _ = _run(manager, list(range(100, 109)))
    manager.deallocate(old)
    recent, _ = _run(manager, list(range(200, 205)))
    manager.deallocate(recent)
    # Two fresh blocks needed: the least recently freed first (the old prompt's second block),
    # then the empty block right after it (recent's partly filled one), not another cached one.
    _run(manager, [1, 2, 3, 4, 5])
    assert manager.cached_prefix(list(range(200, 205))) != []
    assert manager.cached_prefix(list(range(100, 109))) == [0]


def test_can_allocate_counts_hits_as_held_and_keeps_the_spare() -> None:
    manager = BlockManager(3, BS)
    table, _ = _run(manager, list(range(9)))  # all 3 blocks
    assert not manager.can_allocate([7, 7, 7])
    manager.deallocate(table)
    assert manager.can_allocate(list(range(9)))  # 2 cached + 1 fresh
    assert manager.can_allocate(list(range(9)), spare=0)
    assert not manager.can_allocate(list(range(9)), spare=1)


def test_a_hash_collision_is_a_miss_not_wrong_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager, "_chain", lambda previous, chunk: 1)  # every key equal
    manager = BlockManager(8, BS)
    _run(manager, [1, 2, 3, 4, 5])
    assert manager.cached_prefix([9, 9, 9, 9, 5]) == []
    assert manager.cached_prefix([1, 2, 3, 4, 5]) == [0]


def test_append_takes_a_block_only_at_a_block_boundary() -> None:
    manager = BlockManager(2, BS)
    table, _ = _run(manager, [1, 2, 3])
    manager.append(table)
    assert table.tokens == 4 and manager.free_blocks == 1
    assert manager.can_append(table)
    manager.append(table)
    assert len(table.blocks) == 2 and manager.free_blocks == 0
    for _ in range(3):
        manager.append(table)
    assert not manager.can_append(table)


def _decode(manager: BlockManager, table: BlockTable, tokens: list[int], new: list[int]) -> None:
    """Append ``new`` tokens one by one as decoding does, publishing full blocks."""
    for token in new:
        manager.append(table)
        tokens.append(token)
        manager.register(table, tokens, len(tokens))


def test_one_growing_session_stays_in_consecutive_blocks_across_turns() -> None:
    manager = BlockManager(16, BS)
    turn = list(range(10))
    first, _ = _run(manager, turn)
    _decode(manager, first, turn, [50, 51, 52, 53, 54])  # the reply: 15 tokens in 4 blocks
    manager.deallocate(first)
    nxt = [*turn, 60, 61, 62, 63, 64, 65]  # the next turn: the whole last one, then more
    second, cached = _run(manager, nxt)
    assert cached == 12  # the three full blocks; the partly filled fourth is computed again
    assert second.blocks == list(range(6)) and second.consecutive == 6
    assert second.span(BS, len(nxt)) == 0
    _decode(manager, second, nxt, [70, 71, 72])
    assert second.blocks == list(range(6)) and second.span(BS, len(nxt)) == 0


def test_a_block_after_a_table_that_caches_another_prefix_is_left_alone() -> None:
    manager = BlockManager(8, BS)
    a, _ = _run(manager, list(range(8)))  # blocks 0, 1
    b, _ = _run(manager, list(range(100, 108)))  # blocks 2, 3
    manager.deallocate(b)
    manager.deallocate(a)
    longer, cached = _run(manager, [*range(8), *range(20, 30)])  # 2 hits, 3 fresh
    assert cached == 8 and longer.blocks == [0, 1, 4, 5, 6]  # not 2: b's head, still cached
    assert manager.cached_prefix([*range(100, 104), 0]) == [2]
    assert longer.consecutive == 2
    assert longer.span(BS, 18) is None and longer.span(BS, 8) == 0
