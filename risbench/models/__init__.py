"""Model components: encoders, FPNs and decoders (each subpackage lists its built-ins), and the Segmenter."""
