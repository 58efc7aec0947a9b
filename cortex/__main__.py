from cortex.cli import main

main()
