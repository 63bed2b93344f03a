"""The trainable captioner (GAT, semantic guidance, mapping network, GPT-2) and its training loop."""
import warnings

with warnings.catch_warnings():  # PyG 2.x scripts a pooling helper at import, which torch 2.14 deprecates
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import torch_geometric  # noqa: F401  (imported once here, quietly; later imports reuse it)
