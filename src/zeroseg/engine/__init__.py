"""zeroseg.engine"""
