"""NIR import: a NIR graph (snnTorch, Norse, Sinabs, Rockpool, SpikingJelly, ... write it)
compiled like any model snnc takes (docs/nir.md)."""
