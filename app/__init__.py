"""metaserve: meta-trained initializations (MAML family) adapted and served over HTTP."""
