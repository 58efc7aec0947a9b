"""The gateway's faces beyond OpenAI chat: one package per client dialect (its routes, its
mapping to chat completions, its stream writer). A dialect never touches placement: it decodes,
translates, calls ``Gateway.open`` and relays through relay.py like messages.py and
responses.py do."""
