"""Tasks every Taskplane installation has: the seed's demo task and two that do real work."""
