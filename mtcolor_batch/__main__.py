from mtcolor_batch.cli import main

main()
