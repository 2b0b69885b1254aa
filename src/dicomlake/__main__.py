from dicomlake.cli import main

main()
