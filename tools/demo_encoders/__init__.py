"""Train the demo world's tiny encoders (CLIP, Faster R-CNN, GPT-2 and its tokenizer).

They stand in for the real pretrained weights on machines without a model hub, and are saved in
the same formats as real weights, so the pipeline loads them through the same code. Run
``python -m tools.demo_encoders`` to retrain them (about 20 CPU minutes); the files are
committed under ``assets/demo`` so a fresh clone never has to.
"""
