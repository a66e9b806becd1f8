"""The Lua scripts of seats, shipped as package data. Contracts: each file's header and README."""
