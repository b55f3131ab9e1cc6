"""Offline side of the recommender: data loading, id maps, networks, training, evaluation, checkpoints.

Data flows one way: raw ratings -> id maps + interactions -> model -> checkpoint. Nothing in this
package imports ``service``.
"""
