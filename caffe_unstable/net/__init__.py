"""The net: blobs, fillers, graph transforms and the Net class (net.cpp)."""
