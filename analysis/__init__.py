"""Program analysis of PyTorch model source (paper §3.2). Never imports `dslc`."""
