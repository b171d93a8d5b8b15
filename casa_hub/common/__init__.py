"""Small helpers shared by every part of casa_hub; they import nothing else of casa_hub."""
