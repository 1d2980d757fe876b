"""Model store: a folder per model version with a JSON spec and one safetensors file per part."""
