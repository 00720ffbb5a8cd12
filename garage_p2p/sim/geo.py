"""Swedish cities and the latency between them.

One-way latency between two homes = the access link at each end + distance
over fibre. Fibre carries light at about 200 km/ms, and routes run about 1.5
times the great-circle distance (a common rule of thumb for terrestrial
paths); Stockholm–Malmö comes out at ~3.8 ms one way, in line with public
ping tables between the two (7–10 ms RTT between data centres).
"""

from __future__ import annotations

import math

CITIES: dict[str, tuple[float, float]] = {
    "Stockholm": (59.33, 18.07),
    "Göteborg": (57.71, 11.97),
    "Malmö": (55.60, 13.00),
    "Uppsala": (59.86, 17.64),
    "Västerås": (59.61, 16.55),
    "Örebro": (59.27, 15.21),
    "Linköping": (58.41, 15.62),
    "Helsingborg": (56.05, 12.69),
    "Jönköping": (57.78, 14.16),
    "Norrköping": (58.59, 16.18),
    "Umeå": (63.83, 20.26),
    "Luleå": (65.58, 22.15),
    "Sundsvall": (62.39, 17.31),
    "Gävle": (60.67, 17.14),
    "Karlstad": (59.40, 13.50),
    "Östersund": (63.18, 14.64),
    "Kiruna": (67.86, 20.23),
}
"""City → (latitude, longitude)."""

FIBRE_KM_PER_MS = 200.0
ROUTE_FACTOR = 1.5
EARTH_KM = 6371.0


def distance_km(a: str, b: str) -> float:
    """Great-circle distance between two cities."""
    (lat1, lon1), (lat2, lon2) = CITIES[a], CITIES[b]
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(math.sqrt(h))


def city_one_way_ms(a: str, b: str) -> float:
    """One-way latency between two cities' exchanges, milliseconds."""
    return distance_km(a, b) * ROUTE_FACTOR / FIBRE_KM_PER_MS
