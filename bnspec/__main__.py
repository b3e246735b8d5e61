from bnspec.cli import main

main()
