"""Inventory model and loader."""

from bigbang.inventory.loader import load_inventory
from bigbang.inventory.model import Inventory, Location, Server, Team, ThinClient, Workstation

__all__ = ["Inventory", "Location", "Server", "Team", "ThinClient", "Workstation", "load_inventory"]
