"""Fake external services: real aiohttp servers on loopback that behave like the services they stand for."""
