# Install rules and the CMake package (find_package(posenc) -> posenc::posenc).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS posenc EXPORT posenc-targets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/posenc DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET posenc_cli)
  install(TARGETS posenc_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# libposenc.so (the C ABI, posenc::c in the CMake package) and its pkg-config file `posenc`.
if(TARGET posenc_c)
  install(TARGETS posenc_c EXPORT posenc-targets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  file(RELATIVE_PATH POSENC_PC_PREFIX_FROM_PCDIR /posenc-prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /posenc-prefix)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/posenc.pc.in ${PROJECT_BINARY_DIR}/posenc.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/posenc.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()

set(POSENC_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/posenc)
install(EXPORT posenc-targets NAMESPACE posenc:: DESTINATION ${POSENC_CMAKE_DIR})
# Build-tree export, for users who point find_package at the build directory.
export(EXPORT posenc-targets NAMESPACE posenc:: FILE ${PROJECT_BINARY_DIR}/posenc-targets.cmake)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/posenc-config.cmake.in
  ${PROJECT_BINARY_DIR}/posenc-config.cmake INSTALL_DESTINATION ${POSENC_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/posenc-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/posenc-config.cmake ${PROJECT_BINARY_DIR}/posenc-config-version.cmake
  DESTINATION ${POSENC_CMAKE_DIR})
