"""Developer tooling: Google's emulators, a local Alpaca-compatible simulator, functions served by
functions-framework, emulator ID tokens, and the local stack. Used by the tests, the benchmarks
and ``python -m devtools.local_stack``; never deployed (firebase.json ignores this folder)."""
