"""The offloading core, with no torch: what both the live engine and trace replay execute.

- `cache`     the device expert cache (slots bought by a byte budget) and the slot scheduler
- `protocol`  the per-layer protocol of a run: prefetch issue, routing, waits, prediction
              scoring, router and compute charges, step accounting (one copy, for both engines)
- `policies`  cache bookkeeping: LRU (per layer, global), LFU, LFRU, ARC, Least-Stale, Belady's MIN
- `clock`     the simulated clock (and the tickets every clock hands out)
- `costs`     what each operation costs on the simulated clock (roofline from a profile)
- `profile`   hardware profiles (built-ins in `profiles/*.yaml`)
- `records`   per-step counters
- `shapes`    the model shape every cost and byte count is computed from

Nothing here imports torch, transformers or anything above this package.
"""
