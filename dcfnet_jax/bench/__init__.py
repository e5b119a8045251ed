"""Speed of the JAX DCFNet against the PyTorch reference: `python -m dcfnet_jax.bench`.

  python -m dcfnet_jax.bench --batch-size 32 --frameworks jax,torch,torch-compile   # one run
  python -m dcfnet_jax.bench --suite accelerator --out-dir bench_gpu                 # GPU/TPU

The package: `measure` (settings, batch, FLOP figures, the timing loop, result records),
`frameworks` (the JAX steps, i.e. the package's train step and predictor, and the PyTorch
reference, eager or compiled), `runner` (one run: `run_benchmark`, environment, ratios, table),
`accelerator` (the GPU/TPU suite and its tiny CPU check), `accelerator_report` (its Markdown),
`cli` (this command line). Records: docs/bench_*.md, BENCHMARKS.md.
"""
