from fedcmr4d.cli import main

main()
