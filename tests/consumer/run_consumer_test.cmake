# Installs orbitq into a scratch prefix, then configures, builds and runs tests/consumer against it.
file(REMOVE_RECURSE ${WORK_DIR})
foreach(step IN ITEMS
    "${CMAKE_COMMAND};-S;${SOURCE_DIR};-B;${WORK_DIR}/orbitq;-DORBITQ_BUILD_TESTS=OFF;-DORBITQ_BUILD_EXAMPLES=OFF;-DORBITQ_BUILD_BENCHMARKS=OFF;-DORBITQ_INSTALL=ON;-DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix"
    "${CMAKE_COMMAND};--install;${WORK_DIR}/orbitq"
    "${CMAKE_COMMAND};-S;${SOURCE_DIR}/tests/consumer;-B;${WORK_DIR}/consumer;-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix"
    "${CMAKE_COMMAND};--build;${WORK_DIR}/consumer"
    "${WORK_DIR}/consumer/consumer"
    "${WORK_DIR}/consumer/consumer_io")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test step failed (${rc}): ${step}")
  endif()
endforeach()
