"""The gateway's faces: one package per API it speaks. No face imports another face."""
