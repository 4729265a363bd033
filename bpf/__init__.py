"""The data plane's C sources, installed as package data of the controller."""
