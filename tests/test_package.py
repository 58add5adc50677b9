import mobilevideogpt
from mobilevideogpt import constants


def test_version_and_pipeline_constants():
    assert mobilevideogpt.__version__
    # The published pipeline selects k frames from each chunk and feeds them to VideoMamba as one clip.
    assert constants.NUM_FRAMES // constants.CHUNK_SIZE * constants.NUM_SELECT_K_FRAMES_IN_CHUNK == 8
