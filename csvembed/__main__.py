from csvembed.cli import main

main()
