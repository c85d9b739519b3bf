"""zeroseg.modules"""
