"""zeroseg.data"""
