"""What a finished track becomes: adapters, merged HF models, GGUF files with a Modelfile."""
