"""seats: a Redis-backed, async seat-reservation service."""
