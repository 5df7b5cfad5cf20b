"""The README's pictures and the code that draws them (``python -m images.make_images``)."""
