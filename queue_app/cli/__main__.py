from queue_app.cli import main

main()
