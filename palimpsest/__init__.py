"""palimpsest: audit machine unlearning from the inside — was the knowledge deleted, or only suppressed?"""

__version__ = "0.1.0"
