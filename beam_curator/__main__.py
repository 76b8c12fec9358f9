from beam_curator.cli import console_main

console_main()
