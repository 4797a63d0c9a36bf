"""The runtimes a fused model is deployed to, one module each."""
