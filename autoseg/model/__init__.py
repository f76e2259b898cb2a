"""The network and how it is applied: build it (network), save and load it (checkpoint), slide it over a
volume (sliding_window), bring its output back to the image (export), the cascade's input arrays (cascade).
Shared by training (final validation) and inference (prediction); imports neither."""
