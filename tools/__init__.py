"""Test, measurement and lab harnesses for Garage P2P. Not part of the shipped package (not in the wheel)."""
