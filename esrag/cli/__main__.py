from esrag.cli import main

main()
