"""Exchange feed handlers, one wire module and one handler per venue."""
