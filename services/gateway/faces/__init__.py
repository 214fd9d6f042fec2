"""The gateway's faces: one package per API it speaks, each a translation and never a store of
its own. No face imports another face; what two faces need lives at the top of the gateway."""
