"""Developer tooling: the benchmark, model analysis and the synthetic data sets. Lives
beside the CLIs in tools/, outside the runtime package: mobileone_mm never imports it.
tiny_data needs only numpy and Pillow."""
