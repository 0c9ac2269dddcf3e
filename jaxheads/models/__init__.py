"""The decoder (`decoder`: one module for every supported family, built from the layer pieces in `layers`), its
parameter table (`params`), its config (`config`) and the family files that translate checkpoint configs into
it (`llama`, `gemma`)."""
