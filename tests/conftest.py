from flowplug.testing.profiles import load_profile

load_profile()
