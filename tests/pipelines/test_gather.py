import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from beam_curator.transforms.gather import GatherAll


def test_gather_all_gives_one_list_of_every_element_and_an_empty_list_for_nothing():
    with beam.Pipeline() as pipeline:
        every = (pipeline | "Some" >> beam.Create(range(1000)) | "GatherSome" >> GatherAll()
                 | "Sorted" >> beam.Map(sorted))
        nothing = pipeline | "None" >> beam.Create([]) | "GatherNone" >> GatherAll()
        assert_that(every, equal_to([list(range(1000))]), label="CheckSome")
        assert_that(nothing, equal_to([[]]), label="CheckNone")
