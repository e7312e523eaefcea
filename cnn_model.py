"""The CNN of train_classifier.py: log-mel spectrogram in, class probabilities out."""
import keras
from keras import layers


def conv_block(x, filters: int, dropout: float):
    """Two 3x3 convolutions with batch norm, then 2x2 max-pooling and dropout."""
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # Momentum 0.9, not 0.99: on a few thousand clips there are too few steps
        # for slower running statistics to settle, and validation would suffer.
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    return layers.SpatialDropout2D(dropout)(x)


def build_cnn(n_mels: int, n_frames: int, n_classes: int, mean: float, variance: float,
              width: int = 32, blocks: int = 4, dropout: float = 0.3, level: str = "dataset",
              top_db: float = 80.0, name: str = "cnn") -> keras.Model:
    """A VGG-style CNN; channels double with each block.

    The input is the raw dB spectrogram; normalisation with the training set's
    statistics is the first layer, so a saved model needs nothing else to predict.
    With level="clip", each clip is first taken relative to its own loudest bin
    and floored `top_db` below it, as librosa.power_to_db(ref=np.max) does (mean
    and variance must then be those of such clips): how loud a clip was recorded
    says nothing about its class, and what lies far below its peak (a sampler's
    noise floor, a decay's last tail) is more the recording's than the sound's.
    After the convolutions, the frequency axis is folded into the channels and
    only time is pooled (mean and max): where a sound sits in frequency matters,
    when it happens in the clip does not.
    """
    inputs = keras.Input(shape=(n_mels, n_frames), name="log_mel_db")
    x = layers.Reshape((n_mels, n_frames, 1))(inputs)
    if level == "clip":
        x = layers.Subtract(name="relative_to_peak")([x, layers.GlobalMaxPooling2D(keepdims=True)(x)])
        if top_db > 0:  # max(x, -top_db), from built-in layers so the model loads in safe mode
            x = layers.Rescaling(1.0, offset=-top_db)(layers.ReLU(max_value=top_db)(layers.Rescaling(1.0, offset=top_db)(x)))
    x = layers.Normalization(axis=None, mean=mean, variance=variance)(x)
    for i in range(blocks):
        x = conv_block(x, width * 2**i, dropout * (i + 1) / blocks)
    freq, time, channels = x.shape[1], x.shape[2], x.shape[3]
    x = layers.Permute((2, 1, 3))(x)
    x = layers.Reshape((time, freq * channels))(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu", name="embedding")(x)  # read by evaluate_generated.py
    x = layers.Dropout(dropout)(x)
    # float32 output keeps softmax stable under mixed precision.
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="class_probs")(x)
    return keras.Model(inputs, outputs, name=name)
