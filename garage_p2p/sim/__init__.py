"""The network simulator: the mesh's own core logic over a virtual network and clock."""
