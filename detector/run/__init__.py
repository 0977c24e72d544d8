"""The commands' work: train, evaluate, predict, benchmark, fit-folder, the runtime of exported files, and the
progress and tables they print. Imports method, eval and store; never deploy."""
