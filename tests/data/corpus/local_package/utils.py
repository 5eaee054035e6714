"""Loading and splitting helpers used by our notebooks."""

import pandas as pd


def load_frame(path):
    frame = pd.read_csv(path)
    return frame.set_index("customer_id")


def split_frame(frame, fraction, seed):
    train = frame.sample(frac=fraction, random_state=seed)
    return train, frame.drop(train.index)
