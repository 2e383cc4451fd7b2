"""Shipped device error profiles (*.devprofile.yaml, faults.md §7)."""
